"""The ``kubectl-retina`` plugin: ``kubectl retina capture create | list | delete | download``."""
