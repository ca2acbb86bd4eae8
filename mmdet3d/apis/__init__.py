"""Loops and helpers shared by the tools: ``train`` (Trainer), ``test`` (distributed inference),
``data`` (loaders, seeding), ``benchmark`` (stage timers), ``runner`` (run dirs,
building from config, user-error reporting). Import the submodules directly."""
