"""Shadow evaluation: a candidate run beside the serving model on copies of live requests.

- ``keeper``: ``ShadowKeeper``, the shadows of one device: orders, files, start, stop;
- ``runner``: ``ShadowRunner``, one shadow's thread, CPU budget and window of figures;
- ``compare``: how the two models' outputs on one request differ.

The serving model answers every request; a shadow only ever sees copies.
"""
