"""The workflow's stages: one function per Snakemake rule, named like the rule, in the module named
like the rules file that holds the rule (``workflow/rules/train.smk`` -> :mod:`tracinflow.stages.train`),
and the only place where the workflow's files are read and written.

Every stage function is ``rule(inputs, outputs, params, threads=1, log=print)``: the mappings hold
the rule's named inputs, outputs and params (plain dicts, or Snakemake's named lists), so a stage
runs the same from ``workflow/scripts/<rule>.py`` and from a test.
"""
