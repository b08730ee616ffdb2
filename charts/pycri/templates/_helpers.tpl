{{- define "pycri.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pycri.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pycri.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pycri.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pycri.labels" -}}
{{ include "pycri.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pycri.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The daemon reads the chart's pycri.conf, then the node's own drop-ins. */}}
{{- define "pycri.env" -}}
- name: PYCRI_CONFIG
  value: /etc/pycri-chart/pycri.conf
- name: PYCRI_CONFIG_DIR
  value: /etc/pycri/pycri.conf.d
{{- end -}}

{{- define "pycri.volumeMounts" -}}
- name: chart-config
  mountPath: /etc/pycri-chart
  readOnly: true
{{- range .Values.hostMounts }}
- name: {{ .name }}
  mountPath: {{ .path }}
  {{- if .readOnly }}
  readOnly: true
  {{- end }}
  {{- if .propagation }}
  mountPropagation: {{ .propagation }}
  {{- end }}
{{- end }}
{{- end -}}
