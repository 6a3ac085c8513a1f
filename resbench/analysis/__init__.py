"""Measurements on trained runs. Each module takes run directories or models and returns
dataclasses; none prints, draws or trains (console.py renders, report.py draws, train.py trains).

    trained.py    a run directory -> its config and final model (last.pt), checked
    evaluate.py   `resbench evaluate`: last.pt evaluated now, beside what summary.json recorded
    responses.py  Figure 7: layer responses and block ratios of final models, seeds averaged
    probe.py      the same responses, and gradient norms, during training (analysis.every)

The experiments to come are one module each here, next to responses.py: a deeper twin built from a
shallower run, lesion studies, loss landscapes, block statistics over training. Each opens runs
with trained.final_model, measures on responses.fixed_test_images where it needs images, and
returns a dataclass: report.py draws it, console.py renders it, and cli.py gets one short command.
One that measures during training is a callable like probe.TrainingProbe: train.py calls it every
`analysis.every` iterations and logs what it returns, and the measuring stays here.
"""
