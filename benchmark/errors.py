"""Errors that reach the user: each one names the bad input and the fix."""


class UserError(Exception):
    """Bad input from the user (CLI value, config, method folder, dataset path). Exit status 2."""

    exit_code = 2


class RunFailed(Exception):
    """A run failed while training or evaluating (its error is recorded in the run folder). Exit status 1."""

    exit_code = 1


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf; raised at the step it happened."""
