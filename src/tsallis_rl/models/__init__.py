"""Models and tokenizers: locating, building and loading them.

- `models.loading`: locate a model (hub id, folder, run checkpoint, `tiny:NAME`), load it and its
  tokenizer on a device and dtype (LoRA when asked), load saved weights into it strictly.
- `models.basemodel`: the project's default base model, pretrained here on warm chain-sum problems
  and cached (`io.default_cache_dir()`).
- `models.tiny`: tiny random HF models and character tokenizers built without a download.

Importing this package loads nothing heavy; import the submodule you need.
"""
