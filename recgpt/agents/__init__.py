"""RecGPT-V2's hierarchical intent mining without the engines: the agents' settings, output
schemas, prompts, validation of what they wrote, and evidence grounding of the final tags.

`settings` -> `schemas` and `prompts` (what to ask, what to accept) -> the engine (elsewhere) ->
`validate` (what to keep) -> `evidence` (which history items support each kept tag).
"""
