"""The codec: archives and how data becomes them, around the exact model (``lmpress.exact``).

- ``format``: the .lmp byte layout and its parser (docs/FORMAT.md);
- ``coding``: the range coder, fed integer frequencies;
- ``mixers``: the online models an archive may mix with the model's frequencies, by name:
  ``mixing`` (the match model, ``match-v1``) and ``context_mixing`` (``cm-v1``);
- ``settings``: levels and the settings an archive records;
- ``chunking``: where data is cut into segments and chunks;
- ``scoring``: every token's frequencies in full-sequence passes (the encoder, the lens);
- ``segments``: a segment coded and decoded (the decoder's lockstep steps).
"""
