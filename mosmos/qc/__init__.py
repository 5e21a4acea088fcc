"""Quality control of a segmentation: for each organ a status (``ok``, ``check``, ``fail``) with its reasons in
plain sentences, from anatomy on the physical grid (volume against a reference profile, laterality against the
body's midline, fragments, the scan's edges, the body's outline, CT tissue values), from agreement with the
pixel–tag attention maps where they exist, and, over a cohort, from the cohort's own distribution.

Needs numpy and scipy only (no torch, no network): any tool's segmentation can be checked; the cohort report's
thumbnails add Pillow and nibabel's orientation helpers.

- measure: what is measured on one segment and on the body;
- profiles: reference profiles (``adult``, ``phantom``) and the one a model file calls for;
- checks: measurements -> findings, with the thresholds;
- agreement: the segment against the attention maps;
- cohort: each case against the cohort's median and MAD;
- report: one segmentation's QC and its JSON report;
- thumbnails: a flagged organ's axial and coronal slice with its outline;
- cohort_report: a cohort's QC as one HTML page.
"""

from .checks import Thresholds
from .cohort import MIN_CASES, cohort_reasons
from .profiles import PROFILES, Profile, get_profile, profile_for_model
from .report import Evidence, OrganQC, add_cohort_reasons, assess, gather, judge, write_report

__all__ = ["MIN_CASES", "PROFILES", "Evidence", "OrganQC", "Profile", "Thresholds", "add_cohort_reasons", "assess",
           "cohort_reasons", "gather", "get_profile", "judge", "profile_for_model", "write_report"]
