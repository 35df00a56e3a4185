{{- define "tether-agent.labels" -}}
app.kubernetes.io/name: tether-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- define "tether-agent.secret" -}}
{{- if .Values.tls.create }}{{ .Release.Name }}-tls{{ else }}{{ .Values.tls.existingSecret }}{{ end }}
{{- end }}
{{- define "tether-agent.mirrorNamespace" -}}
{{ .Values.mirrorNamespace | default .Release.Namespace }}
{{- end }}
