"""Specs to objects: MODEL and DATA specs resolved through the scheme registries (``schemes``,
torch-free: the command line reads its help from it), the model loaders (``models``, the
``torchvision:`` and ``timm:`` plugins), the data loaders (``datasets``) and what a run loads from
its specs (``inputs``).  The embedded zoo (``neurflow.zoo``) is a plugin of these registries.

Nothing is imported here: ``neurflow.sources.schemes`` must load without torch."""
