"""Prompt templates of the synthesis stages (our own wording; `{...}` fields are filled with `str.format`)."""

from __future__ import annotations

INSTRUCTION_AUGMENT = """You write constraints for testing whether an assistant follows instructions.
Each constraint must be a single, atomic rule about the FORM of a response that a short Python function can check \
automatically (length, words, letters, punctuation, format, structure, keywords). Do not write constraints about \
style, tone, metaphors, translation or facts.

Examples:
{examples}

Write {count} new, different constraints in the same spirit, one per line, without numbering or explanations."""

VERIFIER = """Here is an instruction given to an assistant:
"{instruction}"

Write a Python function `evaluate(response)` that returns True if the string `response` follows the instruction \
and False otherwise. Use only the Python standard library. Then write test cases: responses that follow the \
instruction (output true) and responses that break it (output false).

Answer with one JSON object and nothing else, in this form:
```json
{{"func": "def evaluate(response):\\n    ...", "cases": [{{"input": "...", "output": true}}, \
{{"input": "...", "output": false}}]}}
```"""

BACK_TRANSLATION = """Here is a Python function that checks whether a response follows an instruction:
```python
{code}
```
State the instruction this function checks, as one sentence addressed to the writer of the response. \
Reply with the instruction only."""

NLI_JUDGE = """Premise: "{premise}"
Hypothesis: "{hypothesis}"

Does the premise entail the hypothesis, contradict it, or neither? Reply with one line: \
"Label: entailment", "Label: neutral" or "Label: contradiction"."""

QUERY_WITH_INSTRUCTION = "{query}\n{instruction}"

QUALITY_JUDGE = """You are checking a response to a user request that came with an extra formatting constraint.

Request: {query}
Constraint: {instruction}

Response:
\"\"\"
{response}
\"\"\"

Does the response still answer the request well while following the constraint? Start your reply with a line \
"Score: N", where N is an integer from 0 (useless) to 10 (excellent), then give one sentence of reason."""
