"""Methods that adapt to a support set (prototype baseline, fine-tuning, DIaM, RePRI); all share one interface."""
