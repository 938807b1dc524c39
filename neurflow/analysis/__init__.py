"""What is done with a finished run: reopen it (``run``: ``Run``, ``images``), debug an image
through it (``debug``), audit a dataset (``audit``, ``candidates``), summarise it (``summary``),
label its concepts (``labels``), run the paper's experiments (``evaluate``) and render it
(``report``); ``shortcut_proof`` checks the audit on the zoo's planted shortcuts.

Nothing is imported here: the labeler registry (``analysis.labels``) must load without torch."""
