"""refocuslib: a reproducible companion to Deep-Z, W-Net, Recurrent-MZ and DeepSTORM3D.

Modules (see docs/DESIGN.md): ``optics`` (pupil → PSF), ``samples`` (phantoms), ``imaging`` (forward model and
camera), ``dpm`` (digital propagation matrices), ``metrics`` (image metrics, Gaussian FWHM fits), ``localize``
(peak finding, Hungarian-matched metrics), ``io`` (TIFF with metadata), ``train`` (one training loop),
``models`` (networks), ``reproduce`` (papermill runner and report).
"""
__version__ = "0.1.0"
