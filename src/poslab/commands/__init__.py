"""One module per console script, above the library (which never imports them):

    train.py     poslab-train     train a GPT, then the extrapolation sweep
    evaluate.py  poslab-eval      score a checkpoint, under other members of its family
    inspect.py   poslab-inspect   why an encoding extrapolates or breaks
    report.py    poslab-report    results.json files -> report.md, plots, report.html

and what they share: job.py (a failing job costs only itself) and scoring.py (score a model,
record it). The console scripts' front door, poslab.cli, checks the command line first.
"""
