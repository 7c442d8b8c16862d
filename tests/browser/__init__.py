"""Tests that drive a real browser (Debian's Chromium, headless) through the pages."""
