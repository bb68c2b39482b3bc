"""On-device training (torch + peft). Imported only by the trainer process and tools, never by
the daemon: the control process stays free of torch."""
