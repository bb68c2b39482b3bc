"""Test harnesses that stand in for the system around the daemon (systemd's notify socket and
watchdog, a staged install). Import as `from tests.harness.notify import NotifyListener`."""
