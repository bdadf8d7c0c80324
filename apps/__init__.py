"""Applications built on the medvl library (the Streamlit clinician viewer)."""
