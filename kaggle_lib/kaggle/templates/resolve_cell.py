# kaggle_lib bundle: configs/... paths resolve inside the bundled repository copy.
config_path = _kl_resolve_config(config_path)  # noqa: F821 (the parameters and bundle cells define both)
overrides = _kl_continue(overrides)  # noqa: F821 (push --continue-from: the mounted checkpoints)
