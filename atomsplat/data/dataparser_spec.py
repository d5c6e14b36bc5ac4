"""Entry point registering the tomography DataParser with nerfstudio (imports nothing else)."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from atomsplat.data.dataparser import HOLDOUT_EVERY, TomographyDataParserConfig

tomography_dataparser = DataParserSpecification(
    config=TomographyDataParserConfig(holdout_every=HOLDOUT_EVERY),
    description="Electron-tomography tilt series (float32 TIFF stack, tilt angles, pixel size in A)",
)
