"""``llama-train plan``: what each rank of a layout will hold and how long its step will take,
before anything is launched; the ranking of every layout of N devices; the check of the plan
against what the ranks really hold; and the refusal, before launch, of a layout that cannot fit.

One module per concern (README, "Design"): ``job`` (a layout as the plan sees it), ``devices``,
``parameters``, ``activations``, ``schedule``, ``ranks`` (each rank's memory), ``step_time``,
``estimate`` (a plan and its JSON), ``search`` (``--strategy auto``), ``report``, ``command``,
``prelaunch``, ``check`` and ``measure`` (``--check``, the rank side).
"""
