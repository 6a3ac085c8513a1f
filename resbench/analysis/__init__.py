"""Measurements on trained runs. Each module opens run directories and returns its results (a
dataclass where there is more than one number); none prints, draws or trains (console.py renders,
report.py draws, train.py trains). This package sits after training: train.py never imports it.

    trained.py    a run directory -> its config and final model (last.pt), checked
    evaluate.py   `resbench evaluate`: last.pt evaluated now, beside what summary.json recorded
    responses.py  Figure 7: layer responses and block ratios of final models, seeds averaged
    construct.py  `resbench deepen`: a run deepened by identity blocks, written as a new run
    lesion.py     `resbench analyze --lesion`: test error with blocks deleted (Veit et al. 2016)

Each experiment is one module here: it opens runs with trained.final_model, measures with
resbench/probe.py's functions (on probe.fixed_test_indices' images where it needs images), and
returns a dataclass: report.py draws it, console.py renders it, and cli.py gets one short command.
What is measured during training goes into resbench/probe.py, which train.py calls every
`analysis.every` iterations.
"""
