from .generalized_lss import GeneralizedLSSFPN
from .lss_fpn import LSSFPN
from .second_fpn import SECONDFPN

__all__ = ["GeneralizedLSSFPN", "LSSFPN", "SECONDFPN"]
