"""The drawing code's version: part of every image's key in the store (``generation.worker.image_runtime``).

An image's key holds the fields that decide its pixels (checkpoint, prompt, seed, settings, library versions, ...);
the code that turns those fields into pixels is covered only by ``DRAW_VERSION``. Bump it with any change that can
alter a pixel, and every image is drawn again. ``DRAW_CODE_SHA256`` pins that code (the files and functions named
below, docstrings and comments excluded): tests/test_dvc_deps.py fails when the code changes and the pin does not,
and prints the new pin. Bump the version and set the pin in the same edit; a change that cannot alter a pixel (a
rename, a refactor) sets the pin alone.
"""

DRAW_VERSION = "2"
DRAW_CODE_SHA256 = "ea17a17ed4cdedb2571a61e9eb977eb322260a033f0c2068e74e2857a9164d06"

# What turns an image's key fields into pixels. The test checks that these cover everything they import.
PIXEL_MODULES = (
    "ghostreview/generation/__init__.py",  # the package docstring (importing a module runs it)
    "ghostreview/generation/draw.py",
    "ghostreview/generation/encode.py",
    "ghostreview/generation/prompts.py",  # emphasis and BREAK parsing
    "ghostreview/generation/samplers.py",
    "ghostreview/generation/loading.py",  # checkpoint conversion, config dirs, tokenizers
    "ghostreview/generation/lora.py",
    "ghostreview/generation/families.py",
    "ghostreview/generation/ldm_keys.py",
    "ghostreview/generation/topology.py",  # shipped and tiny configs (loading builds config dirs from them)
    "ghostreview/generation/tokenizer.py",
    "ghostreview/generation/flux.py",  # Flux loading, configs, T5 tokenizer, drawing
    "ghostreview/generation/flux_keys.py",
    "ghostreview/generation/flux_lora.py",
)
# Single functions of modules whose other code cannot alter a pixel (plans, manifests, the store).
PIXEL_FUNCTIONS = {
    "ghostreview/generation/worker.py": ("load_spec_pipeline", "pipeline_drawer"),
    "ghostreview/util/runtime.py": ("stage_runtime", "set_cpu_threads"),  # flush-denormal and thread count
}
PIXEL_DATA = ("ghostreview/generation/configs",)  # the shipped diffusers configs: scheduler, UNet, VAE, text encoders
