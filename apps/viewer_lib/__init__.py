"""Helper logic of the Streamlit viewer, kept free of Streamlit so it is unit-testable.

Modules:
    uploads: validation and staging of untrusted uploads (size, type, zip extraction).
    render: display conversions (windows, slices, heatmap overlay, thumbnails, highlights).
    safe_meta: the allow-list of image facts the viewer may show (no identifiers).
    backend: the one place that calls the medvl library (model, index, eval).
"""
