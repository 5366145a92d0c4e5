"""A survey across networks (docs/survey.md): is a trained layer biased where its input is non-negative, and much
less where its input has both signs?

`collect`: the networks (hparr runs and studies, checkpoints, ONNX files, a networks file of published ones) and
the survey's table, one row per network x layer with the sign of the layer's input; `stats`: the pure statistics;
`analysis`: the prediction tested across layers and within networks, the input kinds, and the controlled test
(normalized against [0, 1] pixels); `figures`; `stage`: `run_survey` (settings in, result out) and `save`;
`fetch`: the published networks' weight files, from the packages that ship them.
"""
from ._collect import COLUMNS, Network, SurveyOptions, input_sign, survey_table
from ._stage import SurveyResult, SurveySettings, run_survey, save

__all__ = ["COLUMNS", "Network", "SurveyOptions", "SurveyResult", "SurveySettings", "input_sign", "run_survey",
           "save", "survey_table"]
