"""Agent-as-a-Judge: sub-judges grade each dimension of a tag or an explanation (pass or fail,
a score and a short reason, judged by a rule, an embedding similarity or the LLM's token
probabilities), and a senior reviewer turns the verdicts into a grade S, A or B."""
