"""`ra3 compare`: does RA3 beat next-token prediction, and its own controls, on held-out code?

From one base model, arms trained by the same M-step on equal code tokens:
- `ntp`: the raw code;
- `ra3`: the EM loop (its E-step's thoughts, then the M-step);
- `shuffled`: RA3's thoughts moved to random safe lines of the same snippets;
- `null`: one fixed sentence at RA3's positions;
- `ra3_c<c>` (optional): the EM loop at another thought penalty c (the ablation).
Each arm is then read on held-out code (other files): code CE without thoughts, code CE with
the model's own thoughts (thinking arms), the training-split CE, and pass@1 on HumanEval / MBPP.
Differences are paired per held-out snippet (per task for pass@1) with bootstrap intervals.

Modules: `config` (CompareConfig), `arms` (the control datasets), `stats` (paired bootstrap),
`measure` (one arm's measurements), `report` (results.json, report.md, plots, TensorBoard) and
`run` (the resumable driver).
"""
