"""AutoIF data synthesis stages (one module per stage) and the resumable runner in `pipeline.py`.

Order: instructions -> verifier_generation -> cross_validation -> back_translation -> queries -> responses ->
quality -> decontamination -> export. Entry point: `autoif synth --config recipes/synth/<name>.yaml`.
"""
