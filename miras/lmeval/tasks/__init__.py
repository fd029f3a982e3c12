"""Task YAMLs of the paper's zero-shot suite (read by lm-eval's TaskManager) and their offline data loaders."""
