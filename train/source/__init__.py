"""cgpt.train.source: where a model's weights are, for init-from, export, eval and plans.

- :mod:`.model_source`: one :class:`~.model_source.ModelSource` (kind, path, shape, tokenizer,
  sha256, the source's peak LR) for a run folder, checkpoint step, model file, Hugging Face
  folder or ``hf:NAME`` (:func:`~.model_source.resolve`), and loading its weights;
- :mod:`.digest`: the one sha256 of weight files; :mod:`.tokenizer`: the tokenizer that
  belongs to a source; :mod:`.fill`: a run config's model section taken from its source;
- :mod:`.hub`, :mod:`.hub_cli`: the Hugging Face Hub, only when it answers.

It imports model/, config, data/ (tokenizers), plan/ (published LRs, the re-prepare advice)
and checkpoints/ (consolidation); never loop/ or eval/, which import it.
"""
