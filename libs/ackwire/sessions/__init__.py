"""Sessions that outlive their connections: records, resume rules, who holds what."""
