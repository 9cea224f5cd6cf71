"""proxy_core: the per-user LLM cost-control engine behind Penny."""
