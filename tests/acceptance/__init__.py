"""Acceptance suite: drives a real ComfyUI server (set up by `.ci/setup_comfyui.sh`) over HTTP."""
