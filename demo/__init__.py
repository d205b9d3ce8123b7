"""The embedded demo: what `dpop run` uses when it is given no data or no model.

    synth_math.py      MetaMath-style maths word problems as low-edit preference pairs
    tiny_tokenizer.py  a byte-level BPE with a ChatML-like chat template, trained on a few texts
    tiny_model.py      a tiny Llama with random weights; `TinyModelStage`: both, trained on ingested pairs
    defaults.py        the demo's dpop.yaml: what `dpop init` writes and `dpop run` starts from

It sits above `pipeline` and `dpop` (which never import it) and below `flows`; it never imports Prefect.
"""
