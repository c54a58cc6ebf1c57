"""nipype-xai: explainable AI for 3D brain-MRI models in Nipype / BIDS / TemplateFlow."""

__version__ = "0.1.0.dev0"
__all__ = ["__version__"]
