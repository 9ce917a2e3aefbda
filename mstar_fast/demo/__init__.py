"""The embedded demo's wing (``mstar demo``): a synthetic multimodal task (:mod:`.synthetic`), tiny
vision-language models and tokenizers built on the spot (:mod:`.tiny`, :mod:`.tokenizer`), the base-model
preparation (:mod:`.base_model`) and the demo run itself (:mod:`.run`). The product (``recipe/``,
``train/``, ...) never imports this package; a run reaches it only by name (``data.train=synthetic``,
``model.policy=tiny``). Nothing is imported here so that ``import mstar_fast.demo`` stays cheap."""
