"""The settings of plain fine-tuning on the server's clean set (``fl_backdoor.training.train``).

Fine-Pruning and Neural Cleanse's unlearning fine-tune with the same settings, so every
comparison spends the same clean data and optimiser budget.
"""

from __future__ import annotations

from fl_backdoor.training import SGDSettings

# lr of the ANP paper's FT baseline (0.01); a short schedule suits a few hundred clean images.
FINE_TUNING = SGDSettings(lr=0.01, epochs=20, batch_size=64, momentum=0.9, weight_decay=5e-4)

