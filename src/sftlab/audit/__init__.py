"""``sftlab audit``: what a fine-tune cost, base against tuned models.

Metric modules are pure functions over strings, token ids or logits (diversity, shift, copying,
forgetting, task, stats); generate and teacher_forcing run the models; report/ renders the results.
The recipe that ties them together is :func:`sftlab.recipes.audit.run_audit`.
"""
