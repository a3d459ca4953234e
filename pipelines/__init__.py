"""KFP pipelines chaining the components in :mod:`components`."""
