"""Distribution of starts over processes: communicator, detection, device binding, driver."""
