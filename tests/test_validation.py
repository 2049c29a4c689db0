"""Bad input: a typed error naming the argument, raised before any solver work."""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SEED_BOUNDS, seed_model
from nlsq_mpi import CovarianceWarning, InputError, ModelError, fit

X = np.linspace(0, 10, 30)
Y = np.asarray(seed_model(X, 12, 0.5, 4, 0.3, 1))
P0 = [10, 1, 5, 0, 0]


def line(x, a, b):
    return a * x + b


@pytest.mark.parametrize("kwargs, match", [
    (dict(xdata=X[:-1]), "xdata: shape"),
    (dict(sigma=np.ones(29)), "sigma: shape"),
    (dict(ydata=np.where(X > 5, np.nan, Y)), "ydata: contains NaN"),
    (dict(xdata=np.where(X > 5, np.inf, X)), "xdata: contains NaN or inf"),
    (dict(sigma=np.where(X > 5, np.nan, 1.0)), "sigma: contains NaN"),
    (dict(bounds=([0, 0, 5, -4, -10], [100, 10, 5, 4, 10])), r"bounds: lower\[2\]=5 is not below upper\[2\]=5"),
    (dict(p0=[10, 1, 25, 0, 0], bounds=SEED_BOUNDS), r"p0: p0\[2\]=25 is outside bounds \[0, 20\]"),
    (dict(p0=None, workflow="auto_global", bounds=SEED_BOUNDS,
          sampler=np.array([[10, 1, 5, 0, 0], [500, 1, 5, 0, 0], [10, np.nan, 5, 0, 0]])),
     r"sampler: start 1 has x\[0\]=500 outside bounds \[0, 100\] \(2 start\(s\) in all\)"),
    (dict(p0=[10, 1, 5, 0]), "p0: the number of parameters disagrees: model signature has 5, p0 has 4"),
    (dict(p0=None, workflow="auto_global", bounds=([0] * 5, [1, 1, 1, 1, np.inf])), "bounds: workflow='auto_global'.*parameter 4"),
    (dict(workflow="hpc"), "bounds: workflow='hpc'"),
    (dict(workflow="auto_global", bounds=SEED_BOUNDS, n_starts=0), "n_starts: must be a positive integer"),
    (dict(workflow="nonsense"), "workflow: unknown workflow 'nonsense'"),
    (dict(workflow="auto_global", bounds=SEED_BOUNDS, sampler="grid"), "sampler: unknown sampler 'grid'"),
    (dict(loss="l1"), "loss: unknown loss 'l1'"),
    (dict(sigma=np.where(X > 5, 0.0, 1.0)), r"sigma: must be positive, sigma\[15\]=0"),
    (dict(sigma=-np.ones(30)), r"sigma: must be positive, sigma\[0\]=-1"),
    (dict(sigma=np.diag(np.r_[np.ones(29), -1.0])), "sigma: the 2-D covariance matrix is not positive definite"),
    (dict(x_scale="auto"), "x_scale"),
    (dict(f_scale=0), "f_scale"),
    (dict(max_nfev=0), "max_nfev"),
    (dict(checkpoint_interval=0), "checkpoint_interval"),
    (dict(walltime="soon"), r"walltime: 'soon' is not a positive time: give seconds, or "
                            r"\[D-\]HH:MM:SS"),
    (dict(walltime=0), "walltime: 0 is not a positive time"),
    (dict(walltime=60), "walltime: a fit without checkpoint_dir has nothing to save"),
    (dict(checkpoint_dir=5), r"checkpoint_dir: must be a path \(str or os.PathLike\), got 5"),
    (dict(checkpoint_seconds=-1), "checkpoint_seconds"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_input_raises_named_error(kwargs, match):
    args = dict(model=seed_model, xdata=X, ydata=Y, p0=P0)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        fit(**args)


def test_model_output_of_wrong_shape():
    with pytest.raises(ModelError, match=r"model: returned shape \(29,\), but ydata has shape \(30,\)"):
        fit(lambda x, a, b: a * x[1:] + b, X, Y, p0=[1, 1])


def test_model_that_raises_is_reported():
    def broken(x, a, b):
        raise ZeroDivisionError("boom")
    with pytest.raises(ModelError, match="calling model.*ZeroDivisionError: boom"):
        fit(broken, X, Y, p0=[1, 1])


def test_fewer_points_than_parameters_gives_inf_pcov_with_warning():
    with pytest.warns(CovarianceWarning, match="could not be estimated"):
        r = fit(line, X[:2], 2 * X[:2] + 1, p0=[1, 0])
    np.testing.assert_allclose(r.popt, [2, 1], rtol=1e-6)
    assert np.all(np.isinf(r.pcov))


def test_nan_start_is_marked_failed_and_fit_goes_on():
    def log_model(x, a, b):
        return jnp.log(a) * x + b           # NaN for a < 0
    x = np.linspace(0, 1, 20)
    y = np.log(2.0) * x + 1
    starts = np.array([[-1.0, 0.0], [1.5, 0.5], [-2.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit(log_model, x, y, sampler=starts, bounds=([-3, -3], [3, 3]), workflow="auto_global")
    assert list(r.starts.status[[0, 2]]) == [-4, -4]
    assert np.isinf(r.starts.cost[0])
    assert r.best_start == 1 and r.popt[0] == pytest.approx(2.0, rel=1e-6)


def test_start_with_finite_residuals_but_infinite_jacobian_is_marked_failed():
    """The solver tests g = J^T f for finiteness instead of every entry of J: a start where
    only the Jacobian is infinite (d sqrt(b)/db at b=0) must still be caught."""
    def sqrt_model(x, a, b):
        return a * x + jnp.sqrt(b)
    x = np.linspace(0, 1, 20)
    y = 2 * x + 1
    starts = np.array([[1.0, 0.0], [1.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit(sqrt_model, x, y, sampler=starts, bounds=([-3, -1], [3, 3]), workflow="auto_global")
    assert r.starts.status[0] == -4 and np.isinf(r.starts.cost[0])
    assert r.best_start == 1 and r.popt == pytest.approx([2.0, 1.0], rel=1e-6)


def test_saving_to_an_unknown_format_is_an_input_error(tmp_path):
    r = fit(seed_model, X, Y, p0=P0)
    with pytest.raises(InputError, match=r"path: unsupported suffix '.csv'.*use .npz or .h5"):
        r.save(tmp_path / "out.csv")
    assert not list(tmp_path.iterdir())
