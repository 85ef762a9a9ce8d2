"""``toklip-demo``: TokLIP end to end on a CPU with no downloads, as a client of the public API.

:mod:`.synthetic` draws the data set, :mod:`.vq` sets up the frozen VQ, :mod:`.teacher` trains the
tiny pixel teacher, :mod:`.run` writes the shards and trains the students through ``toklip-train``'s
code-cache builder and Trainer, :mod:`.report` prints and saves the table.
"""
