"""Maintainer tools: convert, verify and publish fdconv-zoo weights to the Hugging Face Hub.

Run ``python hub_scripts/publish.py --help`` from the repository root.
"""
