"""Write experiment_data.npz for examples/job.py: the damped cosine with Gaussian noise."""
import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", nargs="?", default="experiment_data.npz")
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    x = np.linspace(0, 10, a.points)
    y = 12 * np.exp(-0.5 * x) * np.cos(4 * x + 0.3) + 1 + a.noise * rng.standard_normal(a.points)
    np.savez(a.out, x=x, y=y, sigma=np.full(a.points, a.noise))
    print(f"wrote {a.out}: {a.points} points, noise {a.noise}")


if __name__ == "__main__":
    main()
