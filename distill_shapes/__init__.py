"""The OpenAI wire shapes that the plugin and the embedded server both read and write.

A leaf: it imports neither ``pytest_distill`` nor ``distill_server`` (``lint-imports`` checks
it), so each side parses and checks a shape with the same code. One module per shape:

- ``training``: the chat fine-tuning file (its lines, OpenAI's rules, the examples they let
  through).
- ``tools``: function tool definitions, ``tool_choice``, assistant tool calls and
  ``response_format``, with JSON Schema checked by ``jsonschema``.
- ``batch``: the Batch API's files: input lines (requests), output lines (results), the API's
  limits and the splitting of requests into files within them.
- ``preference``: the DPO file (``input``, ``preferred_output``, ``non_preferred_output``).
- ``reinforcement``: the reinforcement file (prompts and the grader's item fields) and grader
  JSON (one grader or ``multi``, and its ``calculate_output``).
- ``methods``: a fine-tuning job's ``method`` (supervised, dpo, reinforcement) and its
  hyperparameters' ranges.
"""
