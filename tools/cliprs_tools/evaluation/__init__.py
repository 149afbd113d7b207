"""Evaluation of CLIP models on remote-sensing data: zero-shot scene classification (top-k
accuracy, multilabel precision/recall/F1 and Hamming loss) and text/image retrieval (R@k, mR).

`python -m cliprs_tools.evaluation --help` for the command. Modules: `datasets` (the folder layouts),
`metrics` (plain numpy over score matrices), `runner` (a model over the datasets), `report`
(Markdown, JSON, plots, failures), `sample` (the generated sample). Nothing is imported here,
so the command can settle Hugging Face's offline mode before `transformers` loads.
"""
