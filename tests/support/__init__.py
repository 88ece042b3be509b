"""Test doubles shared by the suites: the replay backend and the upstream statements."""
