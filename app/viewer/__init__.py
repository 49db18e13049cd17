"""The browser viewer's server side: the volume and labels as NIfTI, prompts in millimetres, label patches.

The page's image panel is a WebGL viewer (NiiVue, built from ``viewer/`` by the Makefile into
``app/viewer/static``). The browser keeps the volume and the label map, so paging, zoom and
window/level never call the server; it sends prompts here and gets back the changed label plane.
"""
