"""medvl_viewer: the clinician viewer of medvl (research use only), a Streamlit app.

Installed with the ``viewer`` extra (``pip install 'medvl[viewer]'``); served by
``medvl viewer --index IDX`` or ``streamlit run apps/medvl_viewer/app.py -- --index IDX``.
Importing this package imports nothing heavy: each module imports what it needs.

Modules:
    app: the Streamlit page (arguments, cached backend, the query modes).
    command: the ``medvl viewer`` subcommand (builds the ``streamlit run`` line).
    panels: Streamlit panels (image, finding scores, results).
    render: display conversions (windows, slices, heatmap overlay, thumbnails, highlights).
    uploads: validation and staging of untrusted uploads, and :class:`UploadError`.
    safe_meta: the allow-list of image facts the viewer may show (no identifiers).
    backend: the ``ViewerBackend`` surface the UI uses, and ``open_backend``.
    library: the real backend, the one place that calls the medvl library.
"""
