{{- define "tether-hub.labels" -}}
app.kubernetes.io/name: tether-hub
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- define "tether-hub.selector" -}}
app.kubernetes.io/name: tether-hub
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
