"""The packaged Hydra configs (primary config ``train.yaml``), a package so that
``initialize_config_module(config_module="wdiv.configs")`` finds them.

Importing it (Hydra does, on initialize_config_module) registers what the YAML files need from
Python: the ``_schema`` entries of the groups and the ``wdiv_synth_variant`` resolver
(:func:`wdiv.training.config_schema.register`, idempotent), so composing works without
``import wdiv.train``.
"""

from wdiv.training.config_schema import register

register()
